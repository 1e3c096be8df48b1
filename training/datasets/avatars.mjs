// Renders DiceBear avatars to PNG: node avatars.mjs OUT_DIR COUNT SEED SIZE
// Prints one JSON line per image: {"file", "style", "seed", "background"}.
import { createAvatar } from '@dicebear/core';
import * as collection from '@dicebear/collection';
import { Resvg } from '@resvg/resvg-js';
import { writeFileSync, mkdirSync } from 'fs';

const [outDir, countArg, seedArg, sizeArg] = process.argv.slice(2);
const count = Number(countArg), size = Number(sizeArg);
let state = (Number(seedArg) * 2654435761 + 1) >>> 0;
const rand = () => {  // mulberry32: the same draws for the same seed (the `initials` style draws text in the machine's fonts)
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
const styles = Object.keys(collection).sort();
mkdirSync(outDir, { recursive: true });
for (let i = 0; i < count; i++) {
  const style = styles[i % styles.length];
  const seed = Math.floor(rand() * 1e9).toString(36);
  // half on a flat colour, half transparent (the training preprocessing fills alpha)
  const background = rand() < 0.5 ? Math.floor(rand() * 0xffffff).toString(16).padStart(6, '0') : '';
  const options = { seed, size, ...(background ? { backgroundColor: [background] } : {}) };
  const svg = createAvatar(collection[style], options).toString();
  const png = new Resvg(svg, { fitTo: { mode: 'width', value: size } }).render().asPng();
  const file = `${String(i).padStart(5, '0')}.png`;
  writeFileSync(`${outDir}/${file}`, png);
  console.log(JSON.stringify({ file, style, seed, background }));
}
