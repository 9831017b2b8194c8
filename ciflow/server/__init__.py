"""``ciflow serve``: the coordinator, the store protocol over HTTP on file stores it owns.

The API (every route but ``/healthz`` needs ``Authorization: Bearer <token>``; a namespace
``NS`` prefixes the routes as ``/NS/v1/...``, without one the namespace is ``default``)::

    PUT    /v1/keys/<key>   If-None-Match: *  create if absent: 201, or 412 if it exists
                             [Content-Encoding: gzip|zstd] [X-Ciflow-Create-Id: <id>]
    GET    /v1/keys/<key>   200 the value, streamed (gzip/zstd if Accept-Encoding asks), 404
    HEAD   /v1/keys/<key>   200 exists, 404
    DELETE /v1/keys/<key>   204 (absent is fine)
    GET    /v1/list?prefix=P                       200 {"keys": [...]} sorted
    GET    /v1/wait?prefix=P&known=D&timeout=T     200 {"keys": [...]} when the keys under P
                             are not the set of digest D (`ciflow.stores.http.keys_digest`),
                             or after T seconds (at most --max-wait)
    GET    /healthz         200 {"ok": true, "version": ...}; 503 while shutting down

Errors are ``{"error": "<one line>"}`` (to a HEAD: the ``X-Ciflow-Error`` header): 400 a bad
key, query or compressed body, 401 no or an unknown token, 403 a read-only token writing (or a
token of another namespace), 404, 405, 409 a key that is a folder of other keys, 412, 413 a body
above ``--max-body``, 415 an unknown Content-Encoding, 428 a PUT without ``If-None-Match: *``,
507 the server's disk refuses the write. Every answer to an authorised request carries
``X-Ciflow-Max-Body``. A PUT repeating the ``X-Ciflow-Create-Id`` of the create that made the
key gets 201 with ``X-Ciflow-Replayed: 1``.

`app` is the ASGI app, `auth` the token file, `exchange` the request and answer bodies,
`runner` uvicorn (imported only by the command).
"""
