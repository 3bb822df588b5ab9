import { test, expect } from "appwright";

test("a signed-in user buys one item with a saved card", async ({ device }) => {
  await device.getByText("Search").tap();
  await device.getByPlaceholder("Search products").fill("water bottle");
  await device.getByText("Steel Bottle 750 ml").tap();
  await device.getByText("Add to cart").tap();
  await device.getByText("Cart (1)").tap();
  await device.getByText("Checkout").tap();
  await device.getByText("Visa ending 4242").tap();
  await device.getByText("Place order").tap();
  await expect(device.getByText("Thank you for your order")).toBeVisible();
});
