-- Runs after sandbox.lua, which overwrote globals in its own environment.
test("assert_eq is still the harness's own", function()
  local ok, err = pcall(assert_eq, 1, 2)
  assert(not ok, "a failing assert_eq must fail here")
  assert_eq(nil, my_global)
  assert(type(provium.create) == "function")
end)
