//! Thin PyO3 bindings: argument conversion, GIL release, error mapping. No logic.

pub mod dag;
pub mod hash;
pub mod ignore;
pub mod layer;
pub mod select;
pub mod shellmatch;
pub mod verify;
