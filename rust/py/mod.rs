//! Thin PyO3 bindings: argument conversion, GIL release, error mapping. No logic.

pub mod dag;
pub mod hash;
pub mod ignore;
pub mod select;
pub mod verify;
