import { test, expect } from "appwright";

test("a user updates the display name on the profile", async ({ device }) => {
  await device.getByText("Profile").tap();
  await device.getByText("Edit").tap();
  const name = device.getByPlaceholder("Display name");
  await name.fill("QA Bot");
  await device.getByText("Save").tap();
  await expect(device.getByText("QA Bot")).toBeVisible();
});
