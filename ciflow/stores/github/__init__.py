"""The GitHub Actions stores: ``github://`` (run artifacts) and ``github-cache://`` (the cache).

One module per piece: `runtime` (the runner's URL and token), `naming` (namespaces, artifact
names), `twirp` (the results service's JSON calls), `blobs` (signed-URL uploads and downloads),
`zipframe` (the artifact value format), `download` (the stores' shared base), `artifacts`
(`GitHubArtifactStore`, with `listing`: what a listing shows, `creates`: held names and the
probe, `budget`: 500 creations per job) and `cache` (`GitHubCacheStore`). All HTTP goes
through the one retrying `ciflow.stores.transport.Transport`.
"""
