"""The web page: its static assets (``static/``), reading CSV uploads and the report the page draws."""
