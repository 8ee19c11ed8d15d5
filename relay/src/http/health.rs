//! Probes for supervisors and load balancers.

/// `GET /healthz`: the process is up and serving HTTP.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}
