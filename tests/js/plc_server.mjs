// An in-memory did:plc directory (@did-plc/server with its mock database) on 127.0.0.1:
//   node plc_server.mjs PORT
// Prints "listening PORT" once it accepts requests; runs until killed.
import plc from '@did-plc/server'

const port = parseInt(process.argv[2] || '2582', 10)
const server = plc.PlcServer.create({ db: plc.Database.mock(), port })
await server.start()
console.log(`listening ${port}`)
