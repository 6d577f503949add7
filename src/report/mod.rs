//! What a run reports besides its log lines: curves drawn as an image ([`plot`]), read from the
//! logged records ([`history`]), TensorBoard event files ([`tensorboard`]) and an MLflow tracking
//! server ([`mlflow`]).

pub mod history;
pub mod mlflow;
pub mod plot;
pub mod run_report;
pub mod tensorboard;
pub mod timeline;

pub use history::{History, METRICS_FILE};
pub use plot::{write_curves, CURVES_FILE};
pub use run_report::{RunReport, RUN_REPORT_FILE};
pub use tensorboard::SummaryWriter;
