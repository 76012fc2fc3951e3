/**
 * Python's round() on a float: to the nearest integer, halves to the even neighbour. Ports of
 * Python rules that round (datasets' split slicing, transformers' image resizing) must use it to
 * select the same rows and sizes as the code they port.
 */
export function roundHalfEven(x: number): number {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}
