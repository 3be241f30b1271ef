//! The response future of [`ReadReplicaMiddleware`](super::ReadReplicaMiddleware).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use actix_web::dev::ServiceResponse;
use futures_util::future::BoxFuture;
use pin_project_lite::pin_project;

use super::head::copy_headers;
use crate::causal::CausalToken;
use crate::context::{Routed, WriteSink};
use crate::error::Error;
use crate::web::carrier::{Carrier, SigningKey};

pin_project! {
    /// The response future of [`ReadReplicaMiddleware`](super::ReadReplicaMiddleware): the inner
    /// service's future, run inside the request's routing scope, then, when the request wrote and
    /// the middleware carries causal tokens, the token put on the response.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F, B> {
        #[pin]
        inner: Routed<F>,
        carrier: Option<Arc<Carrier>>,
        key: Option<Arc<SigningKey>>,
        sink: Arc<WriteSink>,
        token: Option<(BoxFuture<'static, Result<CausalToken, Error>>, Option<ServiceResponse<B>>)>,
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(super) fn new(
        inner: Routed<F>,
        carrier: Option<Arc<Carrier>>,
        key: Option<Arc<SigningKey>>,
        sink: Arc<WriteSink>,
    ) -> Self {
        ResponseFuture {
            inner,
            carrier,
            key,
            sink,
            token: None,
        }
    }
}

impl<F, B> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("carrier", &self.carrier)
            .field("making_token", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<ServiceResponse<B>, E>>,
{
    type Output = Result<ServiceResponse<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if this.token.is_none() {
            let response = ready!(this.inner.as_mut().poll(cx))?;
            let pool = match (this.carrier.as_ref(), this.sink.pool()) {
                (Some(_), Some(pool)) => pool.clone(),
                _ => return Poll::Ready(Ok(response)),
            };
            let token = Box::pin(async move { pool.causal_token().await });
            *this.token = Some((token, Some(response)));
        }
        let Some((token, response)) = this.token.as_mut() else {
            return Poll::Pending;
        };
        let token = ready!(token.as_mut().poll(cx));
        let Some(mut response) = response.take() else {
            return Poll::Pending;
        };
        match (token, this.carrier.as_ref()) {
            (Ok(token), Some(carrier)) => {
                // The carrier writes `http` 1 headers; actix-web's response takes `http` 0.2.
                let mut written = http::Response::new(());
                carrier.write(&mut written, token, this.key.as_deref());
                copy_headers(written.headers(), response.headers_mut());
            }
            (Ok(_), None) => {}
            (Err(error), _) => tracing::warn!(
                target: "routing_core",
                %error,
                "the request wrote but no causal token could be made"
            ),
        }
        Poll::Ready(Ok(response))
    }
}
