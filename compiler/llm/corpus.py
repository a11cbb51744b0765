"""A small built-in English corpus: trains the tiny example model and calibrates FP8 when the spec
names no calibration text. Plain ASCII, so byte-level BPE pieces decode one by one."""
from __future__ import annotations

CORPUS = """\
The river runs past the old mill and turns the wheel from morning until night.
A farmer walks to the market with a basket of apples and a jar of honey.
The children read books in the library while the rain falls on the roof.
Every morning the baker opens the shop and the smell of fresh bread fills the street.
The train leaves the station at seven and arrives in the city before noon.
A small boat sails across the lake when the wind blows from the west.
The teacher writes numbers on the board and the students copy them into their notes.
In winter the mountains are white with snow and the paths are closed to travelers.
The cat sleeps in the sun near the window and wakes up when the door opens.
Scientists measure the temperature of the ocean to learn how the climate changes.
The engineer checks the bridge every year to make sure it is safe for cars.
A doctor listens to the heart of a patient and writes a note in the record.
The garden has roses, tulips and a tree that gives shade in the summer.
People gather in the square on Sunday to sell bread, cheese and vegetables.
The computer reads the input, runs the model and returns the answer in a few milliseconds.
A server receives many requests at once and groups them into batches to use the hardware well.
The model predicts the next word from the words that came before it.
When the sentence is finished the model writes a special token and stops.
The map shows the roads, the rivers and the small villages in the valley.
At night the stars are bright and the moon rises over the quiet hills.
The musician plays the violin while the audience listens in silence.
A letter arrives from a friend who lives in a country far away.
The workers build a new house with wood, stone and glass.
The library opens at nine and closes at six, except on holidays.
Birds fly south in the autumn and return to the north in the spring.
The chef cuts the onions, heats the pan and cooks the soup slowly.
A clock on the wall counts the seconds, the minutes and the hours.
The students ask questions and the teacher answers them one by one.
The ship carries boxes of tea, coffee and cotton across the sea.
On a clear day you can see the island from the top of the hill.
The old man tells stories about the war, the harvest and the great flood.
Water boils at one hundred degrees and freezes at zero degrees.
The road to the village is long, narrow and full of stones.
The shop sells shoes, hats and warm coats for the winter.
A young girl learns to ride a bicycle in the park with her father.
The museum keeps paintings, statues and old coins from many centuries.
The wind moves the clouds and the clouds bring rain to the fields.
The team trains every afternoon and plays a match on Saturday.
The nurse gives the patient a glass of water and opens the curtains.
Light travels faster than sound, so we see the lightning before we hear the thunder.
"""


def corpus_lines() -> list[str]:
    return [line for line in CORPUS.splitlines() if line.strip()]
