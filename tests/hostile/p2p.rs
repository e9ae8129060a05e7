//! Attacks: see main.rs.

#![allow(unused_imports)]

use crate::common::*;
use crate::support::*;
