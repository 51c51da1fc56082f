//! The pure route compiler and its renderers (JSON route table, Postfix config).

pub mod compiler;
pub mod json;
pub mod postfix;
