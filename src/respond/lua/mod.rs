//! Lua responders (in progress).
