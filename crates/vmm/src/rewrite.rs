//! Placeholder: the syscall rewriter is being written.
