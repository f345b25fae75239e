// Declared for ProcessGroupGloo.hpp only; see ../../README.md.
#pragma once
