//! The seeded, labelled corpus generator and its scoring (feature `corpus`).
