"""The web page: its static files (index.html, app.js, style.css), the upload checks and the HTTP guards."""
