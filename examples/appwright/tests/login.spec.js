import { test, expect } from "appwright";

test("a registered user signs in with email and password", async ({ device }) => {
  await device.getByText("Sign in").tap();
  await device.getByPlaceholder("Email").fill("qa+login@example.com");
  await device.getByPlaceholder("Password").fill(process.env.TEST_USER_PASSWORD ?? "correct-horse");
  await device.getByText("Continue").tap();
  await expect(device.getByText("Hi, QA")).toBeVisible();
});

test("a wrong password shows an error and keeps the user signed out", async ({ device }) => {
  await device.getByText("Sign in").tap();
  await device.getByPlaceholder("Email").fill("qa+login@example.com");
  await device.getByPlaceholder("Password").fill("wrong-password");
  await device.getByText("Continue").tap();
  await expect(device.getByText("Email or password is incorrect")).toBeVisible();
});
