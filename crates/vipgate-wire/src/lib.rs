//! Frame views and in-place rewrites for vipgate.
