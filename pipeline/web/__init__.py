"""The web page: its static files (static/: index.html, app.js, style.css), the upload checks and the HTTP guards."""
