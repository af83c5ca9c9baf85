//! The policy in force: read by every request, replaced whole by a reload.

use std::sync::Arc;

use parking_lot::RwLock;

use super::RoutingPolicy;

/// The routing and guardrail policy the stages read. A reload swaps the whole policy at once:
/// a request sees the old one or the new one, never a mix.
#[derive(Clone)]
pub struct LivePolicy(Arc<RwLock<Arc<RoutingPolicy>>>);

impl LivePolicy {
    /// Starts with `policy`.
    pub fn new(policy: RoutingPolicy) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(policy))))
    }

    /// The policy now in force.
    pub fn current(&self) -> Arc<RoutingPolicy> {
        self.0.read().clone()
    }

    /// Puts `policy` in force (it was checked when it was parsed).
    pub fn replace(&self, policy: RoutingPolicy) {
        *self.0.write() = Arc::new(policy);
    }
}

impl Default for LivePolicy {
    fn default() -> Self {
        Self::new(RoutingPolicy::builtin())
    }
}
