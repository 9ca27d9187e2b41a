//! weft's compiler: GitOps repository text in, diagnostics and per-instance bundles out.
//!
//! Stages, one way, each a module with its own types (see ARCHITECTURE.md):
//! [`repo`] (reads the disk) → [`load`] (YAML tree, schema, model) → [`check`] (validation of
//! components and integrations) → [`instance`] (validation of instances) → [`lower`] (plan
//! types) → [`emit`] (bundle files) → [`build`] (writes them). [`pipeline`] runs the stages;
//! [`ops`] holds what the CLI's commands do besides compiling.

pub mod build;
pub mod builtins;
pub mod check;
pub mod compose;
pub mod config_value;
pub mod cron;
pub mod diagnostic;
pub mod diff;
pub mod duration;
pub mod emit;
pub mod fleet;
pub mod git;
pub mod graph;
pub mod instance;
pub mod kubernetes;
pub mod kubernetes_fleet;
pub mod load;
pub mod lower;
pub mod model;
pub mod ops;
pub mod pipeline;
pub mod repo;
pub mod schema;
pub mod scope;
pub mod size;
pub mod source;
pub mod template;
pub mod yaml;

pub use lower::CompiledIntegration;
pub use pipeline::{
    Compilation, NoVersions, Versions, check, check_with, compile, compile_with,
    integration_sources,
};
pub use weft_plan as plan;
