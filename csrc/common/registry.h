// Each handler file registers its FFI symbol here with a static initializer, so adding an
// op never touches a central list; the pybind11 module exports the map as PyCapsules.
#pragma once
#include <map>
#include <string>

namespace jax_hetero {

inline std::map<std::string, void*>& handler_registry() {
  static std::map<std::string, void*> registry;
  return registry;
}

struct RegisterHandler {
  RegisterHandler(const char* name, void* handler) { handler_registry()[name] = handler; }
};

}  // namespace jax_hetero

#define JAX_HETERO_REGISTER(name, symbol) \
  static ::jax_hetero::RegisterHandler register_##symbol(name, reinterpret_cast<void*>(symbol))
