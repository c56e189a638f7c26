"""Scale-out on Ray: a gallery split over shards, searched by scatter-gather, filled in bulk on
Ray Data and served over HTTP by Ray Serve (docs/scale.md "Across machines on Ray").

| module | job |
|---|---|
| `ray_support` | Ray imported on demand (one line naming the ``cluster`` extra without it); joining a cluster or starting a local one |
| `routing` | which shard holds an entry; merging the shards' top-k into the global one |
| `scope` | which entries a search may return (cameras, time window, metadata) |
| `shard` | one shard: a `GalleryIndex` folder, searched by the one `Retriever` |
| `sharded` | `ShardedGallery`: the shards as Ray actors; adds, removals, checks, search |
| `bulk` | `build`: extracting image files on Ray Data workers into the shards, resumable |
| `wire` | features and crops as JSON (service and client) |
| `service` | the HTTP API (`ServiceCore`) and its Ray Serve deployment |
| `client` | `ServiceClient`, the Python client of the HTTP API |

Nothing here imports Ray at import time: the embedded runtime (`ReIDEngine`, `tal-infer
--index`) runs without it, and a request for the cluster without Ray installed is one line.
"""
