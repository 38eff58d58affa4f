//! `/sync` assembly and the notifier that wakes it.

pub mod notifier;
