"""The inference server, standalone (onnxruntime, numpy, starlette, uvicorn, prometheus_client, pillow): copied
into the image as is.

Only relative imports in here: inside the image this package is `mlsd_server`, in the checkout it is
`mlsd_assets.core.serving.server`. Importing the package itself stays light; the app and model modules are loaded
on demand.
"""

# What the image installs from its wheelhouse (dependencies resolved by pip); uvloop/httptools are uvicorn's
# fast event loop and HTTP parser, worth ~30% latency on small requests; pillow decodes PNG/JPEG inputs.
RUNTIME_REQUIREMENTS: tuple[str, ...] = (
    "onnxruntime",
    "numpy",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "prometheus_client",
    "pillow",
)
