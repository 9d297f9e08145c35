//! Where the delivery engine reads time and sleeps: tokio's clock, or in tests a virtual
//! clock that jumps to the next timer.

use tokio::time::Instant;

/// Where the engine reads time and sleeps.
#[derive(Clone)]
pub(super) enum Clock {
    /// `tokio::time`: real time, or tokio's paused clock in tests that use it.
    Tokio,
    /// A virtual clock driven by the tests.
    #[cfg(test)]
    Manual(std::sync::Arc<super::tests::ManualClock>),
}

impl Clock {
    pub(super) fn now(&self) -> Instant {
        match self {
            Clock::Tokio => Instant::now(),
            #[cfg(test)]
            Clock::Manual(clock) => clock.now(),
        }
    }

    pub(super) async fn sleep_until(&self, deadline: Instant) {
        match self {
            Clock::Tokio => tokio::time::sleep_until(deadline).await,
            #[cfg(test)]
            Clock::Manual(clock) => clock.sleep_until(deadline).await,
        }
    }
}
