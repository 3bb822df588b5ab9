import { test, expect } from "appwright";

test("a new user can skip onboarding and reach the home screen", async ({ device }) => {
  await expect(device.getByText("Welcome")).toBeVisible();
  await device.getByText("Next").tap();
  await device.getByText("Next").tap();
  await device.getByText("Skip").tap();
  await expect(device.getByText("Home")).toBeVisible();
});

test("onboarding can be completed page by page", async ({ device }) => {
  for (const page of ["Browse products", "Save favourites", "Fast checkout"]) {
    await expect(device.getByText(page)).toBeVisible();
    await device.getByText("Next").tap();
  }
  await device.getByText("Get started").tap();
  await expect(device.getByText("Sign in")).toBeVisible();
});
