// Declared for ProcessGroupGloo.hpp only; see ../../README.md.
#pragma once

namespace gloo {
namespace transport {

class Device;
class UnboundBuffer;

}  // namespace transport
}  // namespace gloo
