//! End-to-end tests of the fleet live in `e2e/` (one test binary, `e2e`, whose modules are
//! the scenarios). This library is empty; the package exists because a virtual workspace
//! root cannot own tests.
