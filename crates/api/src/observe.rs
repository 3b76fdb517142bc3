//! Every request counted and timed for `/metrics`, by the route's pattern (never the raw
//! path: ids would make a new series per batch) and the answer's status.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use switchyard_runtime::metrics::{Metrics, RouteLabel, RouteLabels};

/// The middleware: runs the request, then records it.
pub async fn request(metrics: Arc<Metrics>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    metrics
        .api_requests
        .get_or_create(&RouteLabels {
            route: route.clone(),
            status: response.status().as_u16(),
        })
        .inc();
    metrics
        .api_request_seconds
        .get_or_create(&RouteLabel { route })
        .observe(started.elapsed().as_secs_f64());
    response
}
