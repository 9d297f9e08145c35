//! Dead letters: events that could not be processed or delivered, with everything a person needs
//! to understand and replay them — the original event, where it failed, the error class and
//! message, the HTTP status, attempts, first and last failure times and the trace id — and the
//! topic to put it back on (`inputbot dlq redrive`).
//!
//! Locally they are JSON lines under the data directory, one file per dead-letter topic,
//! appended and synced before the source event is acknowledged.
//!
//! ```text
//!  dlq/
//!   record.rs   DeadLetter, FailedAt, ErrorInfo: what a dead letter carries
//!   store.rs    the local store: JSON-lines files, appended and synced
//!   notify.rs   the notice to a person when an event is dead-lettered
//!   inspect.rs  `inputbot dlq inspect`
//!   redrive.rs  `inputbot dlq redrive`: records back to the stage that failed them
//! ```

pub mod inspect;
pub(crate) mod notify;
pub mod record;
pub mod redrive;
pub mod store;

pub use record::{DeadLetter, ErrorInfo, FailedAt};
pub use store::{DlqError, append, files, read, read_all, rewrite};
