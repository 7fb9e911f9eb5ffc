//! OpenTelemetry traces (docs/configuration.md, `[telemetry]`): where a
//! request stands in its trace (`context`), and the export of its spans,
//! off the request path (`export`), and what a finished request's spans
//! say (`spans`, built by the export task).

pub mod context;
pub mod export;
pub mod spans;

pub use context::TraceCtx;
pub use export::{Attr, Exporter, Job, SpanOut};
