import { test, expect } from "appwright";

test("searching for a product lists matching results", async ({ device }) => {
  await device.getByText("Search").tap();
  const input = device.getByPlaceholder("Search products");
  await input.fill("running shoes");
  await expect(device.getByText("Trail Runner 2")).toBeVisible();
});

test("a search without results suggests clearing the filters", async ({ device }) => {
  await device.getByText("Search").tap();
  await device.getByPlaceholder("Search products").fill("zzzz-no-such-product");
  await expect(device.getByText("No results")).toBeVisible();
  await expect(device.getByText("Clear filters")).toBeVisible();
});
