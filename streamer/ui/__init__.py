"""`synthstream ui`: the web console (aiohttp, server-sent events, a page without a build step).

- `server.py`: the application, its routes, the access token, running and stopping it;
- `live.py`: the pipeline figures (`ops.status`), sampled every few seconds and pushed as SSE;
- `topics.py`: reading topics for the browser and finding any record by id (store, then topics);
- `chain.py`: one sample with its whole chain; `api.py`: the JSON endpoints the page calls;
- `static/`: index.html, app.js, style.css — served from here, nothing from a CDN.
"""
