//! Why a contract was refused or a call failed.

/// Why a module was refused at upload or a call failed; a failed call commits nothing.
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ContractError {
    /// The module is larger than [`Limits::max_module_bytes`](crate::contract::Limits).
    #[error("module is {size} bytes, more than {max}")]
    ModuleTooLarge {
        /// Its size.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// Not valid Wasm, or uses floats, a start function or a disabled feature.
    #[error("invalid module: {0}")]
    InvalidModule(String),
    /// The module imports something the host does not offer (`module.name`).
    #[error("unsupported import {0}")]
    UnsupportedImport(String),
    /// A required export is missing or has the wrong type.
    #[error("missing export {0}")]
    MissingExport(String),
    /// The call used all its fuel.
    #[error("out of fuel")]
    OutOfFuel,
    /// The module wanted more memory than allowed.
    #[error("memory limit reached")]
    MemoryLimit,
    /// The guest trapped: a trap code (`UnreachableCodeReached`, `StackOverflow`, ...) or a host
    /// reason (`InvalidRegion`, `ReadOnly`, `Reentrant`, `abort: ...`).
    #[error("trapped: {0}")]
    Trapped(String),
    /// A bound on keys, values, writes, inputs or tables.
    #[error("limit: {0}")]
    Limit(String),
    /// The reply is not `{"ok": ...}` or `{"error": "..."}`, or is too large.
    #[error("invalid result: {0}")]
    InvalidResult(String),
    /// The contract answered `{"error": ...}`.
    #[error("refused: {0}")]
    Refused(String),
    /// The module does not export this optional entry point.
    #[error("no entry point {0}")]
    NoEntry(String),
}

impl ContractError {
    /// The variant's name, used as the XRPC error name.
    pub fn name(&self) -> &'static str {
        match self {
            ContractError::ModuleTooLarge { .. } => "ModuleTooLarge",
            ContractError::InvalidModule(_) => "InvalidModule",
            ContractError::UnsupportedImport(_) => "UnsupportedImport",
            ContractError::MissingExport(_) => "MissingExport",
            ContractError::OutOfFuel => "OutOfFuel",
            ContractError::MemoryLimit => "MemoryLimit",
            ContractError::Trapped(_) => "Trapped",
            ContractError::Limit(_) => "Limit",
            ContractError::InvalidResult(_) => "InvalidResult",
            ContractError::Refused(_) => "Refused",
            ContractError::NoEntry(_) => "NoEntry",
        }
    }
}
