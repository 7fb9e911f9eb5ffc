//! The per-model stack's health layer, in tower's shape: `HealthLayer` wraps
//! the service that makes one upstream attempt. A call first asks the model's
//! `Health` for a permit; an open circuit, a rate-limit rest or a full
//! concurrency cap refuses at once (`Refused::Unavailable`, no attempt spent),
//! otherwise the inner call runs and its outcome is reported back. For
//! streams (`hold`), a success hands the permit over instead: the stream
//! holds the concurrency slot and reports its outcome when it ends.
//!
//! Stack order, outermost first: health -> timeout -> provider call. The
//! timeout sits inside, so a timed-out attempt is a failure the breaker sees.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower::{Layer, Service};

use super::classify::{health_effect, HealthEffect};
use super::health::{Health, Permit, Unavailable};
use crate::providers::UpstreamError;

#[derive(Clone)]
pub struct HealthLayer {
    health: Arc<Health>,
    hold: bool,
}

impl HealthLayer {
    pub fn new(health: Arc<Health>, hold: bool) -> Self {
        Self { health, hold }
    }
}

impl<S> Layer<S> for HealthLayer {
    type Service = HealthService<S>;

    fn layer(&self, inner: S) -> HealthService<S> {
        HealthService {
            inner,
            health: Arc::clone(&self.health),
            hold: self.hold,
        }
    }
}

pub struct HealthService<S> {
    inner: S,
    health: Arc<Health>,
    hold: bool,
}

/// Why a call through the layer did not answer.
#[derive(Debug)]
pub enum Refused {
    /// Skipped without an attempt.
    Unavailable(Unavailable),
    /// The attempt was made and failed.
    Failed(UpstreamError),
}

/// A successful call, with the permit when the layer was asked to hold it.
pub struct Admitted<T> {
    pub value: T,
    pub permit: Option<Permit>,
}

impl<S, Req> Service<Req> for HealthService<S>
where
    S: Service<Req, Error = UpstreamError>,
{
    type Response = Admitted<S::Response>;
    type Error = Refused;
    type Future = HealthFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Refused::Failed)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.health.admit(Instant::now()) {
            Ok(permit) => HealthFuture {
                state: State::Calling {
                    inner: self.inner.call(req),
                },
                permit: Some(permit),
                hold: self.hold,
            },
            Err(why) => HealthFuture {
                state: State::Refused { why: Some(why) },
                permit: None,
                hold: self.hold,
            },
        }
    }
}

pin_project_lite::pin_project! {
    pub struct HealthFuture<F> {
        #[pin]
        state: State<F>,
        permit: Option<Permit>,
        hold: bool,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] inner: F },
        Refused { why: Option<Unavailable> },
    }
}

impl<F> HealthFuture<F> {
    /// Whether the call was refused at admission (before any attempt): the
    /// chain moves on to the next model without awaiting anything.
    pub fn refused(&self) -> Option<Unavailable> {
        match &self.state {
            State::Refused { why } => *why,
            State::Calling { .. } => None,
        }
    }
}

impl<F, T> Future for HealthFuture<F>
where
    F: Future<Output = Result<T, UpstreamError>>,
{
    type Output = Result<Admitted<T>, Refused>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.state.project() {
            StateProj::Refused { why } => Poll::Ready(Err(Refused::Unavailable(
                why.take().unwrap_or(Unavailable::Saturated),
            ))),
            StateProj::Calling { inner } => {
                let result = std::task::ready!(inner.poll(cx));
                let permit = this.permit.take();
                Poll::Ready(match result {
                    Ok(value) => Ok(Admitted {
                        value,
                        permit: match (permit, *this.hold) {
                            (Some(p), true) => Some(p),
                            (Some(p), false) => {
                                p.record(HealthEffect::Success);
                                None
                            }
                            (None, _) => None,
                        },
                    }),
                    Err(e) => {
                        if let Some(p) = permit {
                            p.record(health_effect(&e));
                        }
                        Err(Refused::Failed(e))
                    }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Breaker;
    use std::time::Duration;
    use tower::{service_fn, ServiceExt};

    fn health(threshold: u32) -> Arc<Health> {
        Arc::new(Health::new(
            Breaker {
                failure_threshold: threshold,
                open: Duration::from_secs(30),
            },
            0,
            prometheus::IntGauge::new("g", "g").unwrap(),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn failures_through_the_layer_open_the_circuit_and_refuse_without_calling() {
        let h = health(2);
        let calls = std::sync::atomic::AtomicUsize::new(0);
        for _ in 0..2 {
            let svc = HealthLayer::new(Arc::clone(&h), false).layer(service_fn(|()| async {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err::<(), _>(UpstreamError::Timeout)
            }));
            assert!(matches!(
                svc.oneshot(()).await,
                Err(Refused::Failed(UpstreamError::Timeout))
            ));
        }
        let svc = HealthLayer::new(Arc::clone(&h), false).layer(service_fn(|()| async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, UpstreamError>(())
        }));
        assert!(matches!(
            svc.oneshot(()).await,
            Err(Refused::Unavailable(Unavailable::Open(_)))
        ));
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "the open circuit was not called"
        );
    }

    #[tokio::test]
    async fn holding_hands_the_permit_over() {
        let h = health(1);
        let svc = HealthLayer::new(Arc::clone(&h), true)
            .layer(service_fn(|()| async { Ok::<_, UpstreamError>(7) }));
        let ok = svc.oneshot(()).await.ok().unwrap();
        assert_eq!(ok.value, 7);
        assert_eq!(h.in_flight(), 1, "the stream holds the slot");
        ok.permit.unwrap().record(HealthEffect::Failure);
        assert_eq!(h.in_flight(), 0);
        assert!(matches!(h.admit(Instant::now()), Err(Unavailable::Open(_))));
    }
}
