//! Stage 4: lowering. Validated models become plan types ([`weft_plan`]): a
//! [`CompiledIntegration`] per checked integration (flows with queue names relative to the
//! instance), then a [`Plan`](crate::plan::Plan) per checked instance. Nothing here reports a
//! diagnostic: validation has found every problem before.

mod flow;
mod instance;
mod integration;
mod secrets;

pub use instance::{BROKER_URL, instance};
pub use integration::{CompiledIntegration, integration};
