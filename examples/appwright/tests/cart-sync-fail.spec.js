import { test, expect } from "appwright";

// Tracks a known bug: the cart does not sync when the app comes back online.
// The qgjob demo keeps it on purpose so that you can see how a failed test is
// reported (the simulated runner fails every spec whose file name contains "fail").
test("items added offline appear in the cart once the app is back online", async ({ device }) => {
  await device.getByText("Search").tap();
  await device.getByPlaceholder("Search products").fill("umbrella");
  await device.getByText("Compact Umbrella").tap();
  await device.getByText("Add to cart").tap();
  await expect(device.getByText("Cart (1)")).toBeVisible();
});
