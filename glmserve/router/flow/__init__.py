"""Flow control in the router: requests wait here, by plan priority and fairly between tenants,
until this replica's share of the engines has a free slot; only then are they routed (late
binding). Pure asyncio: the gRPC service calls it, nothing here knows about gRPC."""

from glmserve.router.flow.config import FlowConfig
from glmserve.router.flow.controller import FlowController
from glmserve.router.flow.metrics import FlowMetrics
from glmserve.router.flow.ticket import Capacity, Ticket

__all__ = ["Capacity", "FlowConfig", "FlowController", "FlowMetrics", "Ticket"]
