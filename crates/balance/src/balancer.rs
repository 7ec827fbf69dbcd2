//! A worker thread's p2c balancer, called inline by the sessions of that thread.
//!
//! `tower::balance::p2c::Balance` needs `&mut self`; the usual way to share one is
//! `tower::buffer::Buffer`, a task and a channel hop per call. Here every session of a thread
//! is on the same thread as the balancer, so a session locks it (never contended across
//! threads: one balancer per thread) and asks it directly: choosing a backend costs no task
//! switch and, when a backend is ready, no timer. Only when no backend is ready (all at their
//! connection limit) does a session wait, and then every waiter is woken whenever the state
//! may have changed (the balancer itself remembers only the last waker it was given).

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use futures::future::BoxFuture;
use tower::balance::p2c::Balance;
use tower::{BoxError, Service};

use crate::discover::{Checkout, ThreadDiscover};
use crate::lease::Lease;

type Choice = BoxFuture<'static, Result<Lease, BoxError>>;

pub(crate) struct ThreadBalancer {
    balance: Mutex<Balance<ThreadDiscover, Checkout>>,
    waiters: Mutex<Vec<Waker>>,
}

impl std::fmt::Debug for ThreadBalancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadBalancer").finish_non_exhaustive()
    }
}

impl ThreadBalancer {
    pub(crate) fn new(discover: ThreadDiscover) -> Self {
        Self {
            balance: Mutex::new(Balance::new(discover)),
            waiters: Mutex::default(),
        }
    }

    /// Chooses a backend for `request` (p2c over the ready ones) and starts its checkout.
    pub(crate) fn choose<'a>(&'a self, request: &'a Checkout) -> Choose<'a> {
        Choose {
            balancer: self,
            request,
            waiting: false,
        }
    }

    fn wake_all(&self) {
        let waiters = std::mem::take(&mut *self.waiters.lock().expect("waiters lock"));
        for w in waiters {
            w.wake();
        }
    }
}

/// The future of [`ThreadBalancer::choose`].
pub(crate) struct Choose<'a> {
    balancer: &'a ThreadBalancer,
    request: &'a Checkout,
    waiting: bool,
}

impl Future for Choose<'_> {
    type Output = Result<Choice, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut balance = self.balancer.balance.lock().expect("balance lock");
        match balance.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                let choice = balance.call(self.request.clone());
                drop(balance);
                if self.waiting {
                    self.waiting = false;
                    // Others may be ready too, and the balancer only woke this one.
                    self.balancer.wake_all();
                }
                Poll::Ready(Ok(Box::pin(choice) as Choice))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                drop(balance);
                self.waiting = true;
                self.balancer
                    .waiters
                    .lock()
                    .expect("waiters lock")
                    .push(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Choose<'_> {
    fn drop(&mut self) {
        if self.waiting {
            // This may have been the waker the balancer kept: let the others ask again.
            self.balancer.wake_all();
        }
    }
}
