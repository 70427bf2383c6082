"""`glmserve cluster`: the operator's rendered RayService, router and Redis as separate hosts on this machine."""
