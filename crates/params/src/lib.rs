//! Parser for `setParameters` strings (work in progress).
