"""glmserve: serving GLM-4.6 on Kubernetes with Ray Serve and vLLM."""

# The release; the default image tags of the operator and the chart are this version.
__version__ = "0.1.0"
