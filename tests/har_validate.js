// Validate a HAR file against the HAR 1.2 schema (npm's har-validator, as HAR tools do).
// Usage: node tests/har_validate.js FILE; exit 0 if it validates, 1 with the errors otherwise.
// har-validator is installed into tests/node_modules by .ci/run, where require() finds it.
'use strict'

const fs = require('fs')
const validator = require('har-validator')

const har = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
validator.har(har).then(
  () => process.exit(0),
  (error) => {
    console.error(JSON.stringify(error.errors || String(error), null, 2))
    process.exit(1)
  }
)
