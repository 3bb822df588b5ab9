// AppWright configuration for the qgjob example project.
//
// One project per qgjob target: a qgjob agent runs
//   npx appwright test <test_path> --project <target>
// so the project names below must match the targets emulator, device and browserstack.
import { defineConfig, Platform } from "appwright";

export default defineConfig({
  testDir: "./tests",
  timeout: 120_000,
  retries: 0,
  reporter: [["list"], ["junit", { outputFile: "results/junit.xml" }]],
  projects: [
    {
      name: "emulator",
      use: {
        platform: Platform.ANDROID,
        device: {
          provider: "emulator",
        },
        buildPath: process.env.APP_BUILD_PATH ?? "builds/app-release.apk",
        expectTimeout: 20_000,
      },
    },
    {
      name: "device",
      use: {
        platform: Platform.ANDROID,
        device: {
          provider: "local-device",
        },
        buildPath: process.env.APP_BUILD_PATH ?? "builds/app-release.apk",
        expectTimeout: 20_000,
      },
    },
    {
      name: "browserstack",
      use: {
        platform: Platform.ANDROID,
        device: {
          provider: "browserstack",
          name: "Google Pixel 8",
          osVersion: "14.0",
        },
        // BrowserStack needs BROWSERSTACK_USERNAME and BROWSERSTACK_ACCESS_KEY in the environment.
        // The qgjob browserstack runner uploads the build once per batch and passes its bs://
        // URL, which AppWright (>= 0.1.29) uses as it is; a file path would be uploaded again
        // for every test.
        buildPath:
          process.env.BROWSERSTACK_APP_URL ?? process.env.APP_BUILD_PATH ?? "builds/app-release.apk",
        expectTimeout: 30_000,
      },
    },
  ],
});
