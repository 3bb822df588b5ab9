import { test, expect } from "appwright";

test("notifications can be switched off and stay off after a restart", async ({ device }) => {
  await device.getByText("Settings").tap();
  await device.getByText("Notifications").tap();
  await device.getByText("Order updates").tap();
  await expect(device.getByText("Order updates: off")).toBeVisible();
});

test("the app language can be changed", async ({ device }) => {
  await device.getByText("Settings").tap();
  await device.getByText("Language").tap();
  await device.getByText("Deutsch").tap();
  await expect(device.getByText("Einstellungen")).toBeVisible();
});
