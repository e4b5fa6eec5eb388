//! Policy: heap classes, limits, trust.
