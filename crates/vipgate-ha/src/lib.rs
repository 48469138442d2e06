//! High availability for a pair of vipgate boxes, as pure state machines: time is passed
//! in and decisions come out, so tests replay any sequence of events at any pace. Sockets,
//! threads and clocks live in the daemon.
